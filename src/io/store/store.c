/* The ports, lifecycle and metrics every store backend shares (store.h). */
#include "io/store/store.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* ---- the port families -------------------------------------------------------- */

static const char *const user_ops[] = {
    [TMS_USER_CREATE] = "create",       [TMS_USER_GET_BY_EMAIL] = "get_by_email",
    [TMS_USER_GET_BY_ID] = "get_by_id", [TMS_USER_BUMP_VERSION] = "bump_version",
    [TMS_USER_SET_ROLE] = "set_role",   [TMS_USER_DELETE] = "delete",
    [TMS_USER_RESTORE] = "restore",     [TMS_USER_PING] = "ping",
};

static const char *const task_ops[] = {
    [TMS_TASK_CREATE] = "task_create",
    [TMS_TASK_GET] = "task_get",
    [TMS_TASK_LIST] = "task_list",
    [TMS_TASK_UPDATE] = "task_update",
    [TMS_TASK_DELETE] = "task_delete",
    [TMS_TASK_UNASSIGN_USER] = "task_unassign_user",
    [TMS_TASK_PING] = "task_ping",
    [TMS_TASK_EVENTS] = "task_events",
    [TMS_TASK_EVENTS_PURGE] = "task_events_purge",
};

static const char *const outbox_ops[] = {
    [TMS_OUTBOX_FETCH] = "outbox_fetch", [TMS_OUTBOX_MARK_SENT] = "outbox_mark_sent",
    [TMS_OUTBOX_ADD] = "outbox_add",     [TMS_INBOX_SEEN] = "inbox_seen",
    [TMS_INBOX_RECORD] = "inbox_record", [TMS_OUTBOX_PENDING] = "outbox_pending",
    [TMS_INBOX_TRIM] = "inbox_trim",
};

static const struct family {
    const char *name;
    int nops; /* op codes 1..nops-1 */
    const char *const *ops;
    size_t err_offset;
} families[TMS_STORE_NPORTS] = {
    [TMS_STORE_USERS] = {"users", TMS_USER_PING + 1, user_ops, offsetof(tms_user_op_t, err)},
    [TMS_STORE_TASKS] = {"tasks", TMS_TASK_EVENTS_PURGE + 1, task_ops,
                         offsetof(tms_task_op_t, err)},
    [TMS_STORE_OUTBOX] = {"outbox", TMS_INBOX_TRIM + 1, outbox_ops, offsetof(tms_outbox_op_t, err)},
};

_Static_assert(TMS_USER_PING + 1 <= TMS_STORE_MAX_OPS, "user ops fit the metrics table");
_Static_assert(TMS_TASK_EVENTS_PURGE + 1 <= TMS_STORE_MAX_OPS, "task ops fit the metrics table");
_Static_assert(TMS_INBOX_TRIM + 1 <= TMS_STORE_MAX_OPS, "outbox ops fit the metrics table");

tms_error_t *tms_store_op_err(tms_store_port_t port, tms_msg_t *msg)
{
    return (tms_error_t *)((char *)msg + families[port].err_offset);
}

const char *tms_store_op_name(tms_store_port_t port, int op)
{
    return op > 0 && op < families[port].nops ? families[port].ops[op] : "?";
}

/* An op that came back as a reply may be submitted again: drop its old outputs. */
static void reset(tms_store_port_t port, tms_msg_t *msg)
{
    tms_error_set(tms_store_op_err(port, msg), TMS_OK, "%s", "");
    if (port == TMS_STORE_TASKS) {
        tms_task_op_t *op = (tms_task_op_t *)msg;
        op->replayed = false;
        op->has_more = false;
        op->count = 0;
        op->tasks = NULL; /* in op->arena: released with it */
        op->ntasks = 0;
        op->events = NULL;
        op->nevents = 0;
        op->first_seq = op->last_seq = 0;
    } else if (port == TMS_STORE_OUTBOX) {
        tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
        if (op->ids_seen)
            memset(op->ids_seen, 0, op->nids * sizeof(*op->ids_seen));
        op->count = 0;
        op->more = false;
        for (size_t i = 0; i < op->nevents; i++)
            free(op->events[i].payload);
        free(op->events);
        op->events = NULL;
        op->nevents = 0;
    }
}

/* ---- closing ------------------------------------------------------------------ */

/* The loop's side of closing: an async handle (unreferenced, so it never keeps the
 * loop alive) that any thread wakes when a closing port drained, and whose close
 * callback runs the last port's cb once the backend is gone. */
typedef struct tms_store_waker {
    uv_async_t async;
    tms_store_t *st; /* NULL once released */
    tms_port_closed_fn cb;
    void *ctx;
} waker_t;

static void settle(tms_store_t *st, tms_store_port_t port)
{
    tms_store_port_state_t *ps = &st->port[port];
    if (atomic_fetch_sub(&ps->inflight, 1) == 1 && atomic_load(&ps->closed))
        uv_async_send(&st->waker->async);
}

static bool all_done(const tms_store_t *st)
{
    for (int p = 0; p < TMS_STORE_NPORTS; p++) {
        if (st->port[p].handed_out && !st->port[p].done)
            return false;
    }
    return true;
}

static void on_wake(uv_async_t *a)
{
    waker_t *w = a->data;
    tms_store_t *st = w->st;
    bool waiting = false;
    if (!st || st->releasing)
        return;
    for (int p = 0; p < TMS_STORE_NPORTS; p++) {
        tms_store_port_state_t *ps = &st->port[p];
        if (!atomic_load(&ps->closed) || ps->done)
            continue;
        if (atomic_load(&ps->inflight) != 0) {
            waiting = true;
            continue;
        }
        ps->done = true;
        if (all_done(st)) {
            w->cb = ps->cb;
            w->ctx = ps->ctx;
            st->releasing = true;
            st->backend->release(st); /* calls tms_store_released, now or later */
            return;
        }
        if (ps->cb)
            ps->cb(ps->ctx);
    }
    if (!waiting && st->waker) /* no close waits: the handle stops holding the loop */
        uv_unref((uv_handle_t *)&w->async);
}

static void on_waker_closed(uv_handle_t *h)
{
    waker_t *w = h->data;
    tms_port_closed_fn cb = w->cb;
    void *ctx = w->ctx;
    free(w);
    if (cb)
        cb(ctx);
}

void tms_store_released(tms_store_t *st)
{
    waker_t *w = st->waker;
    tms_metrics_drop_gauges_of(st);
    st->waker = NULL;
    w->st = NULL;
    uv_close((uv_handle_t *)&w->async, on_waker_closed);
}

/* ---- the ports ------------------------------------------------------------------ */

/* An inbox op names at least one event, and a SEEN has room for the answers: one
 * without would "succeed" having recorded nothing, or crash its caller. */
static bool well_formed(tms_store_port_t port, const tms_msg_t *msg)
{
    const tms_outbox_op_t *op = (const tms_outbox_op_t *)msg;
    if (port != TMS_STORE_OUTBOX || (msg->op != TMS_INBOX_SEEN && msg->op != TMS_INBOX_RECORD))
        return true;
    return op->nids > 0 && op->ids && (msg->op != TMS_INBOX_SEEN || op->ids_seen);
}

static int submit(tms_store_t *st, tms_store_port_t port, tms_msg_t **pmsg)
{
    tms_store_port_state_t *ps = &st->port[port];
    tms_msg_t *msg = *pmsg;
    int rc;
    if (msg->op <= 0 || msg->op >= families[port].nops || !well_formed(port, msg))
        return -TMS_EINVAL;
    /* Counted before the closed check (both sequentially consistent): either this
     * submit sees closed, or close's drain sees it in flight. */
    atomic_fetch_add(&ps->inflight, 1);
    if (atomic_load(&ps->closed)) {
        settle(st, port);
        return -TMS_ECLOSED;
    }
    reset(port, msg);
    msg->kind = TMS_MSG_REQUEST;
    atomic_fetch_add(&st->queued, 1);
    rc = st->backend->submit(st, port, pmsg);
    if (rc != 0) {
        atomic_fetch_sub(&st->queued, 1);
        settle(st, port);
    }
    return rc;
}

static void close_port(tms_store_t *st, tms_store_port_t port, tms_port_closed_fn cb, void *ctx)
{
    tms_store_port_state_t *ps = &st->port[port];
    ps->cb = cb;
    ps->ctx = ctx;
    atomic_store(&ps->closed, true);
    /* Checked on the loop (cb never runs inside close), which the handle keeps alive
     * until the port has drained. */
    uv_ref((uv_handle_t *)&st->waker->async);
    uv_async_send(&st->waker->async);
}

#define OF(member, p) ((tms_store_t *)((char *)(p)-offsetof(tms_store_t, member)))

static int users_submit(tms_user_store_t *self, tms_user_op_t **op)
{
    tms_msg_t *msg = &(*op)->msg;
    int rc = submit(OF(users, self), TMS_STORE_USERS, &msg);
    if (rc == 0)
        *op = NULL;
    return rc;
}

static size_t users_busy(tms_user_store_t *self)
{
    return (size_t)atomic_load(&OF(users, self)->port[TMS_STORE_USERS].inflight);
}

static void users_close(tms_user_store_t *self, tms_port_closed_fn cb, void *ctx)
{
    close_port(OF(users, self), TMS_STORE_USERS, cb, ctx);
}

static int tasks_submit(tms_task_store_t *self, tms_task_op_t **op)
{
    tms_msg_t *msg = &(*op)->msg;
    int rc = submit(OF(tasks, self), TMS_STORE_TASKS, &msg);
    if (rc == 0)
        *op = NULL;
    return rc;
}

static size_t tasks_busy(tms_task_store_t *self)
{
    return (size_t)atomic_load(&OF(tasks, self)->port[TMS_STORE_TASKS].inflight);
}

static void tasks_close(tms_task_store_t *self, tms_port_closed_fn cb, void *ctx)
{
    close_port(OF(tasks, self), TMS_STORE_TASKS, cb, ctx);
}

static int outbox_submit(tms_outbox_t *self, tms_outbox_op_t **op)
{
    tms_msg_t *msg = &(*op)->msg;
    int rc = submit(OF(outbox, self), TMS_STORE_OUTBOX, &msg);
    if (rc == 0)
        *op = NULL;
    return rc;
}

static size_t outbox_busy(tms_outbox_t *self)
{
    return (size_t)atomic_load(&OF(outbox, self)->port[TMS_STORE_OUTBOX].inflight);
}

static void outbox_close(tms_outbox_t *self, tms_port_closed_fn cb, void *ctx)
{
    close_port(OF(outbox, self), TMS_STORE_OUTBOX, cb, ctx);
}

static tms_task_reader_t *tasks_reader_open(tms_task_store_t *self, uv_loop_t *loop)
{
    tms_store_t *st = OF(tasks, self);
    return st->backend->task_reader_open ? st->backend->task_reader_open(st, loop) : NULL;
}

static tms_user_reader_t *users_reader_open(tms_user_store_t *self, uv_loop_t *loop)
{
    tms_store_t *st = OF(users, self);
    return st->backend->user_reader_open ? st->backend->user_reader_open(st, loop) : NULL;
}

tms_user_store_t *tms_store_users(tms_store_t *st)
{
    if (!(st->serves & TMS_STORE_SERVES(TMS_STORE_USERS)))
        return NULL;
    st->port[TMS_STORE_USERS].handed_out = true;
    return &st->users;
}

tms_task_store_t *tms_store_tasks(tms_store_t *st)
{
    if (!(st->serves & TMS_STORE_SERVES(TMS_STORE_TASKS)))
        return NULL;
    st->port[TMS_STORE_TASKS].handed_out = true;
    return &st->tasks;
}

tms_outbox_t *tms_store_outbox(tms_store_t *st)
{
    if (!(st->serves & TMS_STORE_SERVES(TMS_STORE_OUTBOX)))
        return NULL;
    st->port[TMS_STORE_OUTBOX].handed_out = true;
    return &st->outbox;
}

/* ---- running ops and metrics ------------------------------------------------------ */

uint64_t tms_store_begin(tms_store_t *st)
{
    atomic_fetch_sub(&st->queued, 1);
    return uv_hrtime();
}

void tms_store_reply(tms_store_t *st, tms_store_port_t port, tms_msg_t *msg, uint64_t began_ns)
{
    tms_store_port_state_t *ps = &st->port[port];
    int op = msg->op;
    tms_error_t *err = tms_store_op_err(port, msg);
    if (!began_ns)
        atomic_fetch_sub(&st->queued, 1); /* answered from the queue */
    if (op > 0 && op < families[port].nops) {
        if (err->code == TMS_INTERNAL || err->code == TMS_UNAVAILABLE)
            tms_counter_add(ps->errors[op], 1);
        if (began_ns)
            tms_histogram_observe(ps->duration[op], (double)(uv_hrtime() - began_ns) / 1e9);
    }
    tms_mailbox_reply(msg);
    settle(st, port);
}

static double queue_gauge(void *arg)
{
    return (double)atomic_load(&((tms_store_t *)arg)->queued);
}

static double inflight_gauge(void *arg)
{
    tms_store_t *st = arg;
    long n = 0;
    for (int p = 0; p < TMS_STORE_NPORTS; p++)
        n += atomic_load(&st->port[p].inflight);
    return (double)n;
}

void tms_store_init(tms_store_t *st, const tms_store_backend_t *backend, uv_loop_t *loop,
                    unsigned serves)
{
    char labels[96];
    st->backend = backend;
    st->loop = loop;
    st->serves = serves;
    st->users = (tms_user_store_t){.name = backend->name,
                                   .submit = users_submit,
                                   .busy = users_busy,
                                   .close = users_close,
                                   .reader_open = users_reader_open};
    st->tasks = (tms_task_store_t){.name = backend->name,
                                   .submit = tasks_submit,
                                   .busy = tasks_busy,
                                   .close = tasks_close,
                                   .reader_open = tasks_reader_open};
    st->outbox = (tms_outbox_t){
        .name = backend->name, .submit = outbox_submit, .busy = outbox_busy, .close = outbox_close};
    st->waker = tms_new(waker_t);
    st->waker->st = st;
    if (uv_async_init(loop, &st->waker->async, on_wake) != 0)
        tms_oom(__FILE__, __LINE__);
    st->waker->async.data = st->waker;
    uv_unref((uv_handle_t *)&st->waker->async);
    for (int p = 0; p < TMS_STORE_NPORTS; p++) {
        if (!(serves & TMS_STORE_SERVES(p)))
            continue;
        for (int op = 1; op < families[p].nops; op++) {
            snprintf(labels, sizeof(labels), "store=\"%s\",op=\"%s\"", backend->name,
                     families[p].ops[op]);
            st->port[p].duration[op] = tms_metrics_histogram(
                "tms_store_duration_seconds", "Time to run one store operation.", labels);
            st->port[p].errors[op] = tms_metrics_counter(
                "tms_store_errors_total",
                "Store operations that failed (UNAVAILABLE or INTERNAL; not found and "
                "conflicts excluded).",
                labels);
        }
    }
    snprintf(labels, sizeof(labels), "store=\"%s\"", backend->name);
    tms_metrics_gauge_fn("tms_store_queue_depth", "Store operations accepted and not yet started.",
                         labels, queue_gauge, st);
    tms_metrics_gauge_fn("tms_store_inflight", "Store operations accepted and not yet answered.",
                         labels, inflight_gauge, st);
}
