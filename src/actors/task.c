#include "actors/task.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/clock.h"
#include "core/objectid.h"
#include "core/events.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/text.h"
#include "core/uv_close.h"

#define CONSUMER "task-group"
#define STORE "task store" /* what the saga's step needs: its failures are transient */
#define MAX_ATTEMPTS 16    /* optimistic-concurrency retries without If-Match */

struct tms_task_actor {
    uv_loop_t *loop;
    tms_mailbox_t *mailbox;
    tms_task_config_t cfg;
    tms_task_reader_t *reader; /* the store's reader on this loop; NULL: none */
    size_t inflight;
    uv_timer_t *purge_timer; /* NULL: no purge here; freed in its close callback */
    bool purging;
    tms_counter_t *purged;
    tms_stopper_t stop;
    tms_counter_t *saga_unassigned, *saga_compensated, *saga_failed;
};

/* One call (or one delivery) in progress. A call's job lives in the call's arena, with
 * the store operations it sends, and goes with the call; a delivery's is on the heap. */
typedef struct job job_t;
typedef void (*step_fn)(job_t *job, tms_task_op_t *op);
struct job {
    tms_task_actor_t *a;
    tms_api_call_t *call;     /* NULL for a delivery */
    tms_delivery_t *delivery; /* user_deleted */
    tms_user_t deleted_user;  /* from the delivery */
    char event_id[37];        /* of the delivery */
    tms_task_t current;       /* update/delete: the task as read */
    int attempts;
    step_fn then;
    void (*outbox_then)(job_t *job, tms_outbox_op_t *op);
    void (*after_exists)(job_t *job);
};

/* ---- completion ------------------------------------------------------- */

static void finish(job_t *job)
{
    tms_task_actor_t *a = job->a;
    a->inflight--;
    /* The job is in the call's arena: answered, the call is its adapter's again. */
    tms_mailbox_reply(&job->call->msg);
    tms_stopper_check(&a->stop, a->mailbox, a->inflight);
}

static void fail(job_t *job, tms_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(job_t *job, tms_status_t code, const char *fmt, ...)
{
    va_list ap;
    job->call->err.code = code;
    va_start(ap, fmt);
    vsnprintf(job->call->err.message, sizeof(job->call->err.message), fmt, ap);
    va_end(ap);
    finish(job);
}

/* ---- the store -------------------------------------------------------- */

static void on_store_reply(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    job_t *job = msg->ctx;
    /* An op in the call's arena goes with the call, which then() may answer: only an
     * op with an arena of its own (a delivery's) is freed here, and that is known
     * before. */
    tms_task_op_t *own = op->arena == &op->own ? op : NULL;
    job->then(job, op);
    tms_task_op_free(&own);
}

static tms_task_op_t *new_op(job_t *job, tms_task_op_kind_t kind, step_fn then)
{
    tms_task_op_t *op = tms_task_op_new(kind, job->call ? &job->call->arena : NULL);
    op->msg.reply_to = job->a->mailbox;
    op->msg.cont = on_store_reply;
    op->msg.ctx = job;
    job->then = then;
    return op;
}

/* Submits op; on refusal answers the call (or nacks the delivery) at once. */
static void submit(job_t *job, tms_task_op_t *op);

static int store_failed(job_t *job, tms_task_op_t *op)
{
    if (op->err.code == TMS_OK)
        return 0;
    /* The store gives a code and a reason; the words are ours. */
    if (op->err.code == TMS_UNAVAILABLE)
        fail(job, TMS_UNAVAILABLE, "task store unavailable, retry later");
    else if (op->err.code == TMS_NOT_FOUND)
        fail(job, TMS_NOT_FOUND, "task %" PRId64 " not found", job->call->task_id);
    else if (op->reason == TMS_TASK_VERSION_MISMATCH)
        fail(job, TMS_FAILED_PRECONDITION,
             "version mismatch: task %" PRId64 " is at version %" PRId64, op->id,
             op->current_version);
    else if (op->reason == TMS_TASK_IDEMPOTENCY_REUSED)
        fail(job, TMS_ALREADY_EXISTS, "Idempotency-Key reused with a different request");
    else if (op->reason == TMS_TASK_IDEMPOTENCY_GONE)
        fail(job, TMS_ALREADY_EXISTS, "Idempotency-Key was used for a task that no longer exists");
    else
        fail(job, TMS_INTERNAL, "internal error");
    return 1;
}

/* ---- validation -------------------------------------------------------- */

/* Trims *field in place and checks 1..max characters of UTF-8. */
static int check_text(job_t *job, char *field, const char *name, long max)
{
    long n;
    tms_text_trim(field);
    n = tms_utf8_length(field, strlen(field));
    if (n < 0) {
        fail(job, TMS_INVALID_ARGUMENT, "%s must be valid UTF-8", name);
        return -1;
    }
    if (n < 1 || n > max) {
        fail(job, TMS_INVALID_ARGUMENT, "%s must be 1 to %ld characters", name, max);
        return -1;
    }
    return 0;
}

/* ---- does the assignee exist (asked of the auth actor) ----------------- */

static void on_exists(tms_msg_t *msg)
{
    tms_api_call_t *q = (tms_api_call_t *)msg;
    job_t *job = msg->ctx;
    tms_status_t code = q->err.code;
    bool exists = q->flag;
    tms_api_call_free(&q);
    if (code != TMS_OK) {
        fail(job, code == TMS_UNAVAILABLE ? TMS_UNAVAILABLE : TMS_INTERNAL,
             "cannot check the assignee, retry later");
        return;
    }
    if (!exists) {
        fail(job, TMS_INVALID_ARGUMENT, "Assigned user does not exist");
        return;
    }
    job->after_exists(job);
}

/* Calls next(job) once user_id is known to exist; answers 400 otherwise. */
static void require_user(job_t *job, const char *user_id, void (*next)(job_t *job))
{
    tms_api_call_t *q;
    tms_msg_t *msg;
    if (!tms_objectid_valid(user_id)) {
        fail(job, TMS_INVALID_ARGUMENT, "Assigned user does not exist");
        return;
    }
    q = tms_api_call_new(TMS_API_USER_EXISTS);
    q->principal.service = true; /* any user may assign to anyone who exists */
    snprintf(q->target_id, sizeof(q->target_id), "%s", user_id);
    snprintf(q->request_id, sizeof(q->request_id), "%s", job->call->request_id);
    q->deadline_ms = job->call->deadline_ms; /* the check travels within the same budget */
    job->after_exists = next;
    msg = &q->msg;
    msg->op = TMS_STAGE_EXECUTE;
    msg->reply_to = job->a->mailbox;
    msg->cont = on_exists;
    msg->ctx = job;
    if (tms_mailbox_post(job->a->cfg.auth, &msg) != 0) {
        tms_api_call_free(&q);
        fail(job, TMS_UNAVAILABLE, "server overloaded, retry later");
    }
}

static int is_admin(const tms_api_call_t *call)
{
    return strcmp(call->principal.role, "admin") == 0;
}

static void kick_relay(job_t *job)
{
    if (job->a->cfg.relay)
        tms_relay_kick(job->a->cfg.relay);
}

/* A write committed: its task events are in the push log for the hubs to read. */
static void poke_push(job_t *job)
{
    tms_push_poke(job->a->cfg.push);
}

/* ---- create ------------------------------------------------------------ */

static void created(job_t *job, tms_task_op_t *op)
{
    if (store_failed(job, op))
        return;
    job->call->task = op->task;
    memset(&op->task, 0, sizeof(op->task));
    job->call->replayed = op->replayed;
    if (op->notify.enabled && !op->replayed)
        kick_relay(job);
    if (!op->replayed)
        poke_push(job);
    if (!op->replayed)
        tms_log_info("task_created", "task=%" PRId64 " by=%s assignee=%s rid=%s",
                     job->call->task.id, job->call->principal.user_id,
                     job->call->task.assigned_to[0] ? job->call->task.assigned_to : "-",
                     job->call->request_id);
    finish(job);
}

/* SHA-256 over the normalized fields: the same request gives the same digest
 * whichever protocol or JSON spacing it came in. */
static void request_digest(const tms_task_t *t, char out[65])
{
    crypto_hash_sha256_state st;
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const unsigned char *)t->title, strlen(t->title) + 1);
    crypto_hash_sha256_update(&st, (const unsigned char *)t->description,
                              strlen(t->description) + 1);
    crypto_hash_sha256_update(&st, (const unsigned char *)t->status, strlen(t->status) + 1);
    crypto_hash_sha256_update(&st, (const unsigned char *)t->assigned_to,
                              strlen(t->assigned_to) + 1);
    crypto_hash_sha256_final(&st, d);
    sodium_bin2hex(out, 65, d, sizeof(d));
}

static void create_store(job_t *job)
{
    tms_api_call_t *call = job->call;
    tms_task_op_t *op = new_op(job, TMS_TASK_CREATE, created);
    int64_t now = tms_now_ms();
    op->task.title = call->title; /* the op lives in the call's arena: no copies */
    op->task.description = call->description;
    snprintf(op->task.status, sizeof(op->task.status), "%s", call->status ? call->status : "open");
    snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s",
             call->assigned_to ? call->assigned_to : "");
    snprintf(op->task.created_by, sizeof(op->task.created_by), "%s", call->principal.user_id);
    op->task.created_at_ms = op->task.updated_at_ms = now;
    op->task.version = 1;
    if (op->task.assigned_to[0]) {
        op->notify.enabled = true;
        snprintf(op->notify.type, sizeof(op->notify.type), "task_created");
        snprintf(op->notify.by, sizeof(op->notify.by), "%s", call->principal.user_id);
        tms_event_id_new(op->notify.event_id);
    }
    if (call->idempotency_key) {
        snprintf(op->idem_key, sizeof(op->idem_key), "%s", call->idempotency_key);
        request_digest(&op->task, op->idem_hash);
    }
    submit(job, op);
}

static void do_create(job_t *job)
{
    tms_api_call_t *call = job->call;
    if (!call->title) {
        fail(job, TMS_INVALID_ARGUMENT, "title is required");
        return;
    }
    if (!call->description) {
        fail(job, TMS_INVALID_ARGUMENT, "description is required");
        return;
    }
    if (check_text(job, call->title, "title", TMS_TITLE_MAX_CHARS) ||
        check_text(job, call->description, "description", TMS_DESCRIPTION_MAX_CHARS))
        return;
    if (call->status && !tms_task_status_valid(call->status)) {
        fail(job, TMS_INVALID_ARGUMENT, "status must be one of open, in progress, closed");
        return;
    }
    if (call->idempotency_key) {
        size_t n = strlen(call->idempotency_key);
        int ok = n >= 1 && n <= TMS_IDEMPOTENCY_KEY_MAX;
        for (size_t i = 0; ok && i < n; i++)
            ok = call->idempotency_key[i] > 0x20 && call->idempotency_key[i] < 0x7f;
        if (!ok) {
            fail(job, TMS_INVALID_ARGUMENT,
                 "Idempotency-Key must be 1 to 128 printable ASCII characters");
            return;
        }
    }
    if (call->assigned_to && call->assigned_to[0])
        require_user(job, call->assigned_to, create_store);
    else
        create_store(job);
}

/* ---- get and list ------------------------------------------------------ */

static void got(job_t *job, tms_task_op_t *op)
{
    if (store_failed(job, op))
        return;
    job->call->task = op->task;
    memset(&op->task, 0, sizeof(op->task));
    finish(job);
}

static int check_id(job_t *job)
{
    if (job->call->task_id <= 0) {
        fail(job, TMS_INVALID_ARGUMENT, "task id must be a positive integer");
        return -1;
    }
    return 0;
}

static void do_get(job_t *job)
{
    tms_task_op_t *op;
    if (check_id(job))
        return;
    op = new_op(job, TMS_TASK_GET, got);
    op->id = job->call->task_id;
    submit(job, op);
}

static void listed(job_t *job, tms_task_op_t *op)
{
    tms_api_call_t *call = job->call;
    if (store_failed(job, op))
        return;
    call->tasks = op->tasks;
    call->ntasks = op->ntasks;
    op->tasks = NULL;
    op->ntasks = 0;
    if (op->has_more && call->ntasks > 0)
        call->next_cursor = tms_task_cursor_encode(&call->arena, call->tasks[call->ntasks - 1].id);
    finish(job);
}

static void do_list(job_t *job)
{
    tms_api_call_t *call = job->call;
    tms_task_op_t *op;
    int64_t after = 0;
    const tms_op_t *row = tms_op_get(call->op);
    int limit = tms_op_list_size(row, call->limit);
    tms_error_t err;
    if (tms_op_check_list_size(row, limit, &err) != 0) {
        fail(job, err.code, "%s", err.message);
        return;
    }
    if (call->status && !tms_task_status_valid(call->status)) {
        fail(job, TMS_INVALID_ARGUMENT, "status must be one of open, in progress, closed");
        return;
    }
    if (call->assigned_to && call->assigned_to[0] && !tms_objectid_valid(call->assigned_to)) {
        fail(job, TMS_INVALID_ARGUMENT, "assignedTo must be a user id");
        return;
    }
    if (call->cursor && (after = tms_task_cursor_decode(call->cursor)) <= 0) {
        fail(job, TMS_INVALID_ARGUMENT, "invalid cursor");
        return;
    }
    op = new_op(job, TMS_TASK_LIST, listed);
    if (call->assigned_to)
        snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", call->assigned_to);
    if (call->status)
        snprintf(op->filter_status, sizeof(op->filter_status), "%s", call->status);
    op->after_id = after;
    op->limit = limit;
    submit(job, op);
}

/* ---- update and delete: read, check, write with the version read ------- */

static void read_current(job_t *job);

static int version_conflict(job_t *job, tms_task_op_t *op)
{
    if (op->err.code != TMS_FAILED_PRECONDITION || job->call->has_if_match)
        return 0;
    /* Someone changed the task between our read and write; the client asked for no
     * particular version, so read again and re-apply. */
    if (++job->attempts < MAX_ATTEMPTS) {
        read_current(job);
    } else {
        fail(job, TMS_UNAVAILABLE, "task %" PRId64 " is changing too often, retry",
             job->call->task_id);
    }
    return 1;
}

static void updated(job_t *job, tms_task_op_t *op)
{
    if (version_conflict(job, op) || store_failed(job, op))
        return;
    job->call->task = op->task;
    memset(&op->task, 0, sizeof(op->task));
    poke_push(job);
    if (op->notify.enabled) {
        tms_log_info("task_assigned", "task=%" PRId64 " assignee=%s rid=%s", op->id,
                     job->call->task.assigned_to, job->call->request_id);
        kick_relay(job);
    }
    finish(job);
}

static void update_store(job_t *job)
{
    tms_api_call_t *call = job->call;
    tms_task_op_t *op = new_op(job, TMS_TASK_UPDATE, updated);
    op->id = call->task_id;
    /* The write is conditional on the version read when the answer depends on it: the
     * client's If-Match, a permission held only as the assignee, or an assignee change
     * (whether it mails someone). A creator's or admin's plain field change is not:
     * concurrent ones then all apply, in store order, with no retries. */
    op->expected_version =
        call->has_if_match || call->assigned_to ||
                !(is_admin(call) || strcmp(job->current.created_by, call->principal.user_id) == 0)
            ? job->current.version
            : 0;
    op->task.updated_at_ms = tms_now_ms();
    if (call->title) {
        op->set_title = true;
        op->task.title = call->title;
    }
    if (call->description) {
        op->set_description = true;
        op->task.description = call->description;
    }
    if (call->status) {
        op->set_status = true;
        snprintf(op->task.status, sizeof(op->task.status), "%s", call->status);
    }
    if (call->assigned_to) {
        op->set_assigned_to = true;
        snprintf(op->task.assigned_to, sizeof(op->task.assigned_to), "%s", call->assigned_to);
        /* API.md: an event when the assignee changes to another user. */
        if (call->assigned_to[0] && strcmp(call->assigned_to, job->current.assigned_to) != 0) {
            op->notify.enabled = true;
            snprintf(op->notify.type, sizeof(op->notify.type), "task_assigned");
            snprintf(op->notify.by, sizeof(op->notify.by), "%s", call->principal.user_id);
            tms_event_id_new(op->notify.event_id);
        }
    }
    submit(job, op);
}

static void deleted(job_t *job, tms_task_op_t *op)
{
    if (version_conflict(job, op) || store_failed(job, op))
        return;
    tms_log_info("task_deleted", "task=%" PRId64 " by=%s rid=%s", op->id,
                 job->call->principal.user_id, job->call->request_id);
    poke_push(job);
    job->call->flag = true;
    finish(job);
}

static void delete_store(job_t *job)
{
    tms_task_op_t *op = new_op(job, TMS_TASK_DELETE, deleted);
    op->id = job->call->task_id;
    op->expected_version = job->current.version;
    submit(job, op);
}

static void on_current(job_t *job, tms_task_op_t *op)
{
    tms_api_call_t *call = job->call;
    const char *me = call->principal.user_id;
    int creator, assignee;
    if (store_failed(job, op))
        return;
    job->current = op->task;
    memset(&op->task, 0, sizeof(op->task));
    creator = strcmp(job->current.created_by, me) == 0;
    assignee = strcmp(job->current.assigned_to, me) == 0;
    if (!tms_op_permits(tms_op_get(call->op), &call->principal,
                        &(tms_op_subject_t){.creator = creator, .assignee = assignee})) {
        fail(job, TMS_PERMISSION_DENIED,
             call->op == TMS_API_TASK_UPDATE
                 ? "only the creator, the assignee or an admin may update this task"
                 : "only the creator or an admin may delete this task");
        return;
    }
    if (call->has_if_match && call->if_match != job->current.version) {
        fail(job, TMS_FAILED_PRECONDITION,
             "version mismatch: task %" PRId64 " is at version %" PRId64, call->task_id,
             job->current.version);
        return;
    }
    if (call->op == TMS_API_TASK_DELETE) {
        delete_store(job);
        return;
    }
    if (call->assigned_to && call->assigned_to[0] &&
        strcmp(call->assigned_to, job->current.assigned_to) != 0 && job->attempts == 0)
        require_user(job, call->assigned_to, update_store);
    else
        update_store(job);
}

static void read_current(job_t *job)
{
    tms_task_op_t *op = new_op(job, TMS_TASK_GET, on_current);
    op->id = job->call->task_id;
    submit(job, op);
}

static void do_update(job_t *job)
{
    tms_api_call_t *call = job->call;
    if (check_id(job))
        return;
    if (!call->title && !call->description && !call->status && !call->assigned_to) {
        fail(job, TMS_INVALID_ARGUMENT, "no fields to update");
        return;
    }
    if ((call->title && check_text(job, call->title, "title", TMS_TITLE_MAX_CHARS)) ||
        (call->description &&
         check_text(job, call->description, "description", TMS_DESCRIPTION_MAX_CHARS)))
        return;
    if (call->status && !tms_task_status_valid(call->status)) {
        fail(job, TMS_INVALID_ARGUMENT, "status must be one of open, in progress, closed");
        return;
    }
    if (call->assigned_to && call->assigned_to[0] && !tms_objectid_valid(call->assigned_to)) {
        fail(job, TMS_INVALID_ARGUMENT, "Assigned user does not exist");
        return;
    }
    read_current(job);
}

static void do_delete(job_t *job)
{
    if (check_id(job) == 0)
        read_current(job);
}

/* ---- the push log (core/push.h) ---------------------------------------- */

static void events_read(job_t *job, tms_task_op_t *op)
{
    tms_api_call_t *call = job->call;
    if (store_failed(job, op))
        return;
    call->events = op->events; /* in the call's arena, as the op */
    call->nevents = op->nevents;
    call->first_seq = op->first_seq;
    call->last_seq = op->last_seq;
    finish(job);
}

/* The push hubs' read: events after since (up to upto), matching the filters. */
static void do_events(job_t *job)
{
    tms_api_call_t *call = job->call;
    tms_task_op_t *op;
    if (!tms_op_permits(tms_op_get(call->op), &call->principal, NULL)) {
        fail(job, TMS_PERMISSION_DENIED, "task events are for TMS services");
        return;
    }
    if (call->limit < 0 || call->limit > 1000 || call->since < 0) {
        fail(job, TMS_INVALID_ARGUMENT, "limit must be 0 to 1000 and since not negative");
        return;
    }
    op = new_op(job, TMS_TASK_EVENTS, events_read);
    op->after_id = call->since;
    op->upto_seq = call->upto;
    op->limit = call->limit;
    op->id = call->task_id;
    if (call->assigned_to)
        snprintf(op->filter_assigned_to, sizeof(op->filter_assigned_to), "%s", call->assigned_to);
    if (call->status)
        snprintf(op->filter_status, sizeof(op->filter_status), "%s", call->status);
    submit(job, op);
}

static void on_purge_timer(uv_timer_t *t);

static void on_purged(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    tms_task_actor_t *a = msg->ctx;
    bool more = false;
    a->purging = false;
    if (op->err.code != TMS_OK)
        tms_log_warn("push_purge_failed", "error=%s", tms_status_name(op->err.code));
    else if (op->count > 0) {
        tms_counter_add(a->purged, (uint64_t)op->count);
        more = op->count >= op->limit; /* a bounded step: go on soon */
    }
    tms_task_op_free(&op);
    a->inflight--;
    if (more && a->purge_timer && !tms_stopping(&a->stop))
        uv_timer_start(a->purge_timer, on_purge_timer, 100, a->cfg.push_purge_ms);
    tms_stopper_check(&a->stop, a->mailbox, a->inflight);
}

static void on_purge_timer(uv_timer_t *t)
{
    tms_task_actor_t *a = t->data;
    tms_task_op_t *op;
    if (a->purging || tms_stopping(&a->stop))
        return;
    op = tms_task_op_new(TMS_TASK_EVENTS_PURGE, NULL);
    op->before_ms = tms_now_ms() - (int64_t)a->cfg.push_retention_ms;
    op->keep_events = a->cfg.push_max_events;
    op->limit = 10000;
    op->msg.reply_to = a->mailbox;
    op->msg.cont = on_purged;
    op->msg.ctx = a;
    if (tms_task_store_submit(a->cfg.tasks, &op) != 0) {
        tms_task_op_free(&op);
        return;
    }
    a->purging = true;
    a->inflight++;
}

/* ---- the saga: user_deleted ------------------------------------------- */

static void ack(job_t *job, tms_ack_t out)
{
    tms_task_actor_t *a = job->a;
    a->cfg.bus->ack(a->cfg.bus, &job->delivery, out);
    a->inflight--;
    free(job);
    tms_stopper_check(&a->stop, a->mailbox, a->inflight);
}

typedef void (*outbox_step_fn)(job_t *job, tms_outbox_op_t *op);

static void on_outbox_reply(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    job_t *job = msg->ctx;
    job->outbox_then(job, op);
    tms_outbox_op_free(&op);
}

static void outbox(job_t *job, outbox_step_fn then, tms_outbox_op_t *op)
{
    op->msg.reply_to = job->a->mailbox;
    op->msg.cont = on_outbox_reply;
    op->msg.ctx = job;
    job->outbox_then = then;
    if (tms_outbox_submit(job->a->cfg.outbox, &op) != 0) {
        tms_outbox_op_free(&op);
        ack(job, tms_ack_transient(STORE, "outbox queue full or closed", 0)); /* later */
    }
}

static void recorded(job_t *job, tms_outbox_op_t *op)
{
    ack(job, op->err.code == TMS_OK ? tms_ack_ok() : tms_ack_transient(STORE, op->err.message, 0));
}

/* Asks whether (SEEN) or records that (RECORD) the job's event was handled. */
static void inbox(job_t *job, tms_outbox_op_kind_t kind, outbox_step_fn then)
{
    outbox(job, then, tms_inbox_op_one(kind, CONSUMER, job->event_id));
}

static void record_handled(job_t *job)
{
    inbox(job, TMS_INBOX_RECORD, recorded);
}

static void compensation_written(job_t *job, tms_outbox_op_t *op)
{
    if (op->err.code != TMS_OK) {
        tms_counter_add(job->a->saga_failed, 1);
        tms_log_error("saga_compensation_failed", "user=%s error=%s", job->deleted_user.id,
                      tms_status_name(op->err.code));
        ack(job, tms_ack_transient(STORE, op->err.message, 0));
        return;
    }
    tms_counter_add(job->a->saga_compensated, 1);
    tms_log_warn("saga_compensating", "user=%s", job->deleted_user.id);
    kick_relay(job);
    record_handled(job);
}

/* Unassigning failed: ask for the user back with compensate_user_deletion. */
static void compensate(job_t *job)
{
    tms_outbox_op_t *op = tms_outbox_op_new(TMS_OUTBOX_ADD);
    tms_event_id_new(op->event.event_id);
    snprintf(op->event.topic, sizeof(op->event.topic), TMS_TOPIC_COMPENSATE);
    snprintf(op->event.key, sizeof(op->event.key), "%s", job->deleted_user.id);
    op->event.payload = tms_event_user_json(&job->deleted_user, op->event.event_id);
    outbox(job, compensation_written, op);
}

static void unassigned(job_t *job, tms_task_op_t *op)
{
    if (op->err.code == TMS_UNAVAILABLE) {
        /* The store is down, not the saga failing: the event waits (the consumer
         * pauses) and the unassignment runs when the store answers again. Bringing
         * the user back for an outage would undo a delete the user asked for. */
        ack(job, tms_ack_transient(STORE, op->err.message, 0));
        return;
    }
    if (op->err.code != TMS_OK) {
        tms_log_warn("saga_unassign_failed", "user=%s error=%s", job->deleted_user.id,
                     tms_status_name(op->err.code));
        compensate(job);
        return;
    }
    tms_counter_add(job->a->saga_unassigned, 1);
    if (op->count > 0)
        poke_push(job);
    tms_log_info("saga_unassigned", "user=%s tasks=%" PRId64, job->deleted_user.id, op->count);
    record_handled(job);
}

static void seen_checked(job_t *job, tms_outbox_op_t *op)
{
    tms_task_op_t *t;
    if (op->err.code != TMS_OK) {
        ack(job, tms_ack_transient(STORE, op->err.message, 0));
        return;
    }
    if (op->ids_seen[0]) {
        ack(job, tms_ack_ok()); /* a redelivery */
        return;
    }
#ifdef TMS_FAULTS
    /* Test-only switch (never compiled into release builds): make unassigning fail
     * so the compensation path can be exercised end to end. */
    if (getenv("TMS_FAULT_UNASSIGN")) {
        compensate(job);
        return;
    }
#endif
    t = new_op(job, TMS_TASK_UNASSIGN_USER, unassigned);
    snprintf(t->user_id, sizeof(t->user_id), "%s", job->deleted_user.id);
    t->task.updated_at_ms = tms_now_ms();
    submit(job, t);
}

static void on_user_deleted(tms_task_actor_t *a, tms_delivery_t *d)
{
    job_t *job = tms_new(job_t);
    job->a = a;
    job->delivery = d;
    a->inflight++;
    if (tms_event_user_parse(d->payload, &job->deleted_user, job->event_id) != 0) {
        if (d->attempt == 1)
            tms_log_error("event_malformed", "topic=%s", d->topic);
        ack(job, tms_ack_permanent("malformed event")); /* dead-lettered, never retried forever */
        return;
    }
    if (!job->event_id[0]) /* the original auth-service sends none */
        tms_event_id_derive(d->topic, d->payload, d->payload_len, job->event_id);
    inbox(job, TMS_INBOX_SEEN, seen_checked);
}

/* ---- dispatch ---------------------------------------------------------- */

/* True (and the call answered, *op freed first: it may be in the call's arena) when
 * nobody waits for the call any more: checked before every store operation of a
 * call, so an abandoned call does no more I/O. */
static bool abandoned(job_t *job, tms_task_op_t **op)
{
    const char *why;
    tms_status_t code;
    if (!job->call || !tms_api_call_abandoned(job->call, uv_now(job->a->loop)))
        return false;
    tms_task_op_free(op);
    code = tms_api_abandoned_status(job->call, &why);
    tms_log_debug("call_abandoned", "rid=%s op=%s why=%s", job->call->request_id,
                  tms_api_op_name(job->call->op), why);
    fail(job, code, "%s", why);
    return true;
}

static void submit(job_t *job, tms_task_op_t *op)
{
    tms_task_reader_t *reader = job->a->reader;
    if (abandoned(job, &op))
        return;
    /* A read the store's reader answers now: no queue, no thread hop. */
    if (reader && (op->msg.op == TMS_TASK_GET || op->msg.op == TMS_TASK_LIST) &&
        reader->read(reader, op) == 0) {
        on_store_reply(&op->msg);
        return;
    }
    if (tms_task_store_submit(job->a->cfg.tasks, &op) == 0)
        return;
    tms_task_op_free(&op);
    if (job->call)
        fail(job, TMS_UNAVAILABLE, "task store is overloaded, retry later");
    else
        ack(job, tms_ack_transient(STORE, "task store queue full or closed", 0));
}

static void run_call(job_t *job)
{
    switch (job->call->op) {
    case TMS_API_TASK_CREATE:
        do_create(job);
        break;
    case TMS_API_TASK_GET:
        do_get(job);
        break;
    case TMS_API_TASK_LIST:
        do_list(job);
        break;
    case TMS_API_TASK_UPDATE:
        do_update(job);
        break;
    case TMS_API_TASK_DELETE:
        do_delete(job);
        break;
    case TMS_API_TASK_EVENTS:
        do_events(job);
        break;
    default:
        fail(job, TMS_UNIMPLEMENTED, "operation not served by the task actor");
        break;
    }
}

#ifdef TMS_FAULTS
/* Test-only switch (never compiled into release builds): TMS_FAULT_TASK_DELAY_MS
 * holds every call that long before the task actor starts it, so tests can reset a
 * stream or pass a deadline while a call waits, and see that it then does no work. */
typedef struct delayed {
    uv_timer_t timer;
    job_t *job;
} delayed_t;

static void free_delayed(uv_handle_t *h)
{
    free(h->data);
}

static void on_delay_over(uv_timer_t *t)
{
    delayed_t *d = t->data;
    run_call(d->job);
    uv_close((uv_handle_t *)t, free_delayed);
}

static bool delay_call(job_t *job)
{
    const char *ms = getenv("TMS_FAULT_TASK_DELAY_MS");
    delayed_t *d;
    if (!ms || atoi(ms) <= 0)
        return false;
    d = tms_new(delayed_t);
    d->job = job;
    uv_timer_init(job->a->loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, on_delay_over, (uint64_t)atoi(ms), 0);
    return true;
}
#endif

static void on_message(void *owner, tms_msg_t *msg)
{
    tms_task_actor_t *a = owner;
    job_t *job;
    if (msg->kind == TMS_MSG_STOP) {
        if (a->purge_timer)
            uv_timer_stop(a->purge_timer);
        tms_stopper_hold(&a->stop, msg);
        tms_stopper_check(&a->stop, a->mailbox, a->inflight);
        return;
    }
    if (msg->op == TMS_EVENT_DELIVERY) {
        tms_delivery_t *d = (tms_delivery_t *)msg;
        if (tms_stopping(&a->stop)) /* comes again after a restart */
            a->cfg.bus->ack(a->cfg.bus, &d, tms_ack_transient("task actor", "stopping", 0));
        else
            on_user_deleted(a, d);
        return;
    }
    job = tms_arena_calloc(&((tms_api_call_t *)msg)->arena, 1, sizeof(*job));
    job->a = a;
    job->call = (tms_api_call_t *)msg;
    a->inflight++;
    if (tms_stopping(&a->stop)) {
        fail(job, TMS_UNAVAILABLE, "server stopping, retry later");
        return;
    }
#ifdef TMS_FAULTS
    if (delay_call(job))
        return;
#endif
    run_call(job);
}

tms_task_actor_t *tms_task_start(uv_loop_t *loop, const tms_task_config_t *cfg)
{
    tms_task_actor_t *a = tms_new(tms_task_actor_t);
    a->loop = loop;
    a->cfg = *cfg;
    a->mailbox = tms_mailbox_new(loop, "task", cfg->mailbox_capacity, on_message, a);
    a->saga_unassigned = tms_metrics_counter("tms_saga_total", "delete-user saga outcomes",
                                             "outcome=\"unassigned\"");
    a->saga_compensated = tms_metrics_counter("tms_saga_total", "delete-user saga outcomes",
                                              "outcome=\"compensated\"");
    a->saga_failed =
        tms_metrics_counter("tms_saga_total", "delete-user saga outcomes", "outcome=\"failed\"");
    tms_mailbox_export_depth(a->mailbox);
    if (cfg->tasks && cfg->tasks->reader_open)
        a->reader = cfg->tasks->reader_open(cfg->tasks, loop);
    a->purged = tms_metrics_counter("tms_push_purged_total",
                                    "task events purged from the push log (push.retention)", "");
    if (cfg->push_purge_ms) {
        a->purge_timer = tms_new(uv_timer_t);
        uv_timer_init(loop, a->purge_timer);
        a->purge_timer->data = a;
        uv_timer_start(a->purge_timer, on_purge_timer, 1000, cfg->push_purge_ms);
        uv_unref((uv_handle_t *)a->purge_timer);
    }
    if (cfg->bus && cfg->bus->subscribe(cfg->bus, TMS_TOPIC_USER_DELETED, CONSUMER, a->mailbox))
        tms_log_error("subscribe_failed", "topic=%s group=%s", TMS_TOPIC_USER_DELETED, CONSUMER);
    return a;
}

tms_mailbox_t *tms_task_mailbox(tms_task_actor_t *a)
{
    return a->mailbox;
}

size_t tms_task_inflight(tms_task_actor_t *a)
{
    return a->inflight;
}

void tms_task_free(tms_task_actor_t **pa)
{
    tms_task_actor_t *a = *pa;
    if (!a)
        return;
    *pa = NULL;
    tms_mailbox_free(&a->mailbox);
    if (a->reader)
        a->reader->close(a->reader);
    if (a->purge_timer)
        uv_close((uv_handle_t *)a->purge_timer, tms_uv_free_on_close);
    free(a);
}
