#include "actors/notifier.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/clock.h"
#include "core/events.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/notify.h"
#include "core/queue.h"

#define CONSUMER "notification-group"
#define SUBJECT "New Task Assigned"
#define LIMIT_KEYS 20000 /* buckets per limit (~130 bytes each): ~5 MiB at most for both */
#define DEAD_KEPT 256    /* events the mailer dead-lettered, remembered (~200 bytes each) */
#define INBOX_BATCH 64   /* events in one inbox op at most */

/* Why each failure is what it is (core/event_bus.h): a store, the user lookup or the
 * mailer that does not answer is transient (the event waits, paused, and is never
 * dead-lettered for it); a malformed event, an assignee that no longer exists (the
 * delete-user saga ran) or a recipient the server refuses for good is permanent. */
#define INBOX "task store" /* the inbox lives in the task store */
#define USERS "auth"       /* the assignee's address comes from the auth actor (or peer) */

typedef struct job job_t;

typedef void (*inbox_fn)(job_t *job, const tms_error_t *err, bool seen);

/* The inbox questions (SEEN) or records (RECORD) of the jobs that came while one of
 * the same kind was out: they go in one op when it is back. The first goes at once;
 * under load, a batch is whatever arrived during a round trip (on PostgreSQL one
 * statement, and for records one commit per batch instead of one per mail). */
typedef struct inbox_queue {
    tms_outbox_op_kind_t kind;
    inbox_fn then;
    job_t *head, *tail; /* waiting, linked by job->queued */
    size_t n;
    job_t *sent; /* the batch out */
    bool out;    /* an op of this kind is out (or its answers are being handed out) */
} inbox_queue_t;

struct tms_notifier {
    uv_loop_t *loop;
    tms_mailbox_t *mailbox;
    tms_notifier_config_t cfg;
    tms_notify_limit_t *limit;
    size_t inflight;
    bool mailer_closed;      /* cfg.mailer is closing or gone: not to be used */
    const char *mailer_name; /* its name (a literal): for reasons, after it is gone too */
    job_t *jobs;             /* in flight and past their parse, for twins (see twin_of) */
    tms_stopper_t stop;
    inbox_queue_t seen_q, record_q;
    tms_counter_t *sent, *duplicate, *dropped, *failed, *dead_letter, *suppressed;
    /* Events whose mail the mailer refused for good (and kept as a dead letter): their
     * redeliveries fail the same way without a second send. A ring. */
    struct {
        char event_id[37];
        char reason[160];
    } dead[DEAD_KEPT];
    size_t dead_next;
};

struct job {
    tms_notifier_t *n;
    tms_delivery_t *delivery;
    char type[16];
    char user_id[25];
    int64_t task_id;
    char event_id[37];
    char *title;
    char assigned_by[25]; /* "" when the event names nobody (older events) */
    job_t *queued;        /* next in an inbox queue or batch */
    job_t *prev, *next;   /* in n->jobs */
    job_t *twins;         /* the same event delivered again while this one is in flight */
};

static void inbox(job_t *job, inbox_queue_t *q);

/* The job in flight with the same event id, or NULL. O(jobs in flight), at most the
 * mailbox's capacity. */
static job_t *twin_of(tms_notifier_t *n, const char *event_id)
{
    for (job_t *j = n->jobs; j; j = j->next) {
        if (strcmp(j->event_id, event_id) == 0)
            return j;
    }
    return NULL;
}

static void track(job_t *job)
{
    tms_notifier_t *n = job->n;
    job->next = n->jobs;
    if (n->jobs)
        n->jobs->prev = job;
    n->jobs = job;
}

static void ack(job_t *job, tms_ack_t out)
{
    tms_notifier_t *n = job->n;
    job_t *twins = job->twins;
    if (job->prev || n->jobs == job) {
        if (job->prev)
            job->prev->next = job->next;
        else
            n->jobs = job->next;
        if (job->next)
            job->next->prev = job->prev;
    }
    /* Twins waited for this one's outcome: now the inbox knows whether it was mailed
     * (they are duplicates) or not (the first of them goes on). */
    if (twins) {
        job_t *first = twins;
        first->twins = twins->next;
        first->next = NULL;
        track(first);
        inbox(first, &n->seen_q);
    }
    n->cfg.bus->ack(n->cfg.bus, &job->delivery, out);
    n->inflight--;
    free(job->title);
    free(job);
    tms_stopper_check(&n->stop, n->mailbox, n->inflight);
}

/* ---- inbox ----------------------------------------------------------- */

/* Hands each job of batch its answer; the queue counts as out meanwhile, so that what
 * the callbacks ask joins the queue rather than going alone. */
static void inbox_answer(inbox_queue_t *q, job_t *batch, const tms_error_t *err, const bool *seen)
{
    q->out = true;
    for (size_t i = 0; batch; i++) {
        job_t *job = batch;
        batch = job->queued;
        job->queued = NULL;
        q->then(job, err, seen && seen[i]);
    }
    q->out = false;
}

static void inbox_pump(tms_notifier_t *n, inbox_queue_t *q);

static void on_inbox_reply(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_notifier_t *n = msg->ctx;
    inbox_queue_t *q = op->msg.op == TMS_INBOX_SEEN ? &n->seen_q : &n->record_q;
    job_t *batch = q->sent;
    q->sent = NULL;
    inbox_answer(q, batch, &op->err, op->ids_seen);
    tms_outbox_op_free(&op);
    inbox_pump(n, q);
}

/* While nothing of the queue's kind is out: its next jobs (INBOX_BATCH at most) go in
 * one op. */
static void inbox_pump(tms_notifier_t *n, inbox_queue_t *q)
{
    while (q->head && !q->out) {
        size_t k = q->n < INBOX_BATCH ? q->n : INBOX_BATCH;
        tms_outbox_op_t *op = tms_inbox_op_new(q->kind, CONSUMER, k);
        job_t *last = NULL;
        for (size_t i = 0; i < k; i++) {
            last = last ? last->queued : q->head;
            snprintf(op->ids[i], sizeof(op->ids[i]), "%s", last->event_id);
        }
        q->sent = q->head;
        q->head = last->queued;
        if (!q->head)
            q->tail = NULL;
        last->queued = NULL;
        q->n -= k;
        op->msg.reply_to = n->mailbox;
        op->msg.cont = on_inbox_reply;
        op->msg.ctx = n;
        q->out = true;
        if (tms_outbox_submit(n->cfg.inbox, &op) != 0) {
            tms_error_t err;
            job_t *batch = q->sent;
            tms_error_set(&err, TMS_UNAVAILABLE, "inbox queue full or closed");
            tms_outbox_op_free(&op);
            q->sent = NULL;
            inbox_answer(q, batch, &err, NULL);
        }
    }
}

/* Asks (SEEN) or records (RECORD) job's event: now, or in the batch after the op out. */
static void inbox(job_t *job, inbox_queue_t *q)
{
    TMS_FIFO_APPEND(q->head, q->tail, job, queued);
    q->n++;
    inbox_pump(job->n, q);
}

static void recorded(job_t *job, const tms_error_t *err, bool seen)
{
    (void)seen;
    /* If the record failed, a redelivery mails again; the Maildir adapter still
     * recognises the event_id, and SMTP receivers the Message-ID. */
    ack(job, err->code == TMS_OK ? tms_ack_ok() : tms_ack_transient(INBOX, err->message, 0));
}

static const char *dead_reason(tms_notifier_t *n, const char *event_id)
{
    for (size_t i = 0; i < DEAD_KEPT; i++) {
        if (n->dead[i].event_id[0] && strcmp(n->dead[i].event_id, event_id) == 0)
            return n->dead[i].reason;
    }
    return NULL;
}

static void remember_dead(tms_notifier_t *n, const char *event_id, const char *reason)
{
    size_t i = n->dead_next++ % DEAD_KEPT;
    snprintf(n->dead[i].event_id, sizeof(n->dead[i].event_id), "%s", event_id);
    snprintf(n->dead[i].reason, sizeof(n->dead[i].reason), "%.159s", reason);
}

/* ---- mail ------------------------------------------------------------ */

static void on_mail_reply(tms_msg_t *msg)
{
    tms_mail_t *mail = (tms_mail_t *)msg;
    job_t *job = msg->ctx;
    tms_notifier_t *n = job->n;
    tms_status_t code = mail->err.code;
    int duplicate = mail->duplicate;
    uint64_t retry_after = mail->retry_after_ms;
    char why[sizeof(mail->err.message) + 8];
    snprintf(why, sizeof(why), "%s", mail->err.message);
    tms_mail_free(&mail);
    if (code == TMS_OK) {
        tms_counter_add(duplicate ? n->duplicate : n->sent, 1);
        tms_log_info("email_sent", "event_id=%s task=%" PRId64 " user=%s duplicate=%d",
                     job->event_id, job->task_id, job->user_id, duplicate);
        inbox(job, &job->n->record_q);
    } else if (code == TMS_FAILED_PRECONDITION) {
        /* Refused for good, and kept by the mailer as a dead letter (`tms mail dlq`):
         * a permanent failure, so the event reaches the bus's dead letters too, with
         * the server's reply; its redeliveries are not mailed again. */
        char reason[sizeof(why) + 8];
        snprintf(reason, sizeof(reason), "%s %s", n->mailer_name, why);
        tms_counter_add(n->dead_letter, 1);
        tms_log_warn("email_dead_letter", "event_id=%s task=%" PRId64 " user=%s", job->event_id,
                     job->task_id, job->user_id);
        remember_dead(n, job->event_id, reason);
        ack(job, tms_ack_permanent(reason));
    } else if (code == TMS_INVALID_ARGUMENT) {
        if (job->delivery->attempt == 1) {
            tms_counter_add(n->dropped, 1);
            tms_log_error("email_dropped", "event_id=%s reason=unsafe_mail", job->event_id);
        }
        ack(job, tms_ack_permanent("unsafe mail (address or header)"));
    } else {
        /* Down, refusing for now (4xx), timed out, or its breaker open: not the event's
         * fault. The bus pauses (one log line), so nothing is logged per event. */
        tms_counter_add(n->failed, 1);
        ack(job, tms_ack_transient(n->mailer_name, why, retry_after));
    }
}

static void free_mail_msg(tms_msg_t *msg)
{
    tms_mail_t *m = (tms_mail_t *)msg;
    tms_mail_free(&m);
}

static void send_mail(job_t *job, const char *email)
{
    tms_mail_t *mail;
    if (job->n->mailer_closed) {
        ack(job, tms_ack_transient("mailer", "closed (shutting down)", 0));
        return;
    }
    mail = tms_mail_new();
    /* The title is whatever the assigner typed: shown quoted and labelled as theirs. */
    mail->text = tms_notify_text(job->task_id, job->title, job->assigned_by);
    mail->html = tms_notify_html(job->task_id, job->title, job->assigned_by);
    snprintf(mail->to, sizeof(mail->to), "%s", email);
    snprintf(mail->subject, sizeof(mail->subject), SUBJECT);
    snprintf(mail->event_id, sizeof(mail->event_id), "%s", job->event_id);
    mail->date_ms = tms_now_ms();
    mail->msg.reply_to = job->n->mailbox;
    mail->msg.cont = on_mail_reply;
    mail->msg.ctx = job;
    mail->msg.free_fn = free_mail_msg;
    if (tms_mailer_submit(job->n->cfg.mailer, &mail) != 0) {
        tms_mail_free(&mail);
        ack(job, tms_ack_transient("mailer", "mail queue full or closed", 0));
    }
}

/* ---- assignee lookup --------------------------------------------------- */

static void on_user_info(tms_msg_t *msg)
{
    tms_api_call_t *q = (tms_api_call_t *)msg;
    job_t *job = msg->ctx;
    if (q->err.code == TMS_NOT_FOUND || q->err.code == TMS_INVALID_ARGUMENT) {
        /* Deleted (the saga ran) or never valid: no retry can find an address. */
        if (job->delivery->attempt == 1) {
            tms_counter_add(job->n->dropped, 1);
            tms_log_warn("email_dropped", "event_id=%s reason=assignee_gone user=%s", job->event_id,
                         job->user_id);
        }
        tms_api_call_free(&q);
        ack(job, tms_ack_permanent("assignee not found"));
        return;
    }
    if (q->err.code != TMS_OK) {
        char why[sizeof(q->err.message)];
        snprintf(why, sizeof(why), "%s", q->err.message);
        tms_api_call_free(&q);
        ack(job, tms_ack_transient(USERS, why, 0));
        return;
    }
    send_mail(job, q->user.email);
    tms_api_call_free(&q);
}

static void seen_checked(job_t *job, const tms_error_t *err, bool seen)
{
    tms_api_call_t *q;
    tms_msg_t *msg;
    tms_notify_verdict_t verdict;
    if (err->code != TMS_OK) {
        ack(job, tms_ack_transient(INBOX, err->message, 0));
        return;
    }
    if (seen) {
        tms_counter_add(job->n->duplicate, 1);
        ack(job, tms_ack_ok());
        return;
    }
    const char *dead = dead_reason(job->n, job->event_id);
    if (dead) { /* refused for good already: not sent again */
        ack(job, tms_ack_permanent(dead));
        return;
    }
    verdict = tms_notify_limit_check(job->n->limit, job->event_id, job->assigned_by, job->user_id,
                                     uv_now(job->n->loop));
    if (verdict != TMS_NOTIFY_SEND) {
        /* Handled, not failed: recorded like a sent one, so it is neither retried nor
         * mailed later in a burst. */
        tms_counter_add(job->n->suppressed, 1);
        tms_log_warn("email_suppressed", "event_id=%s task=%" PRId64 " user=%s by=%s limit=%s",
                     job->event_id, job->task_id, job->user_id,
                     job->assigned_by[0] ? job->assigned_by : "-",
                     tms_notify_verdict_name(verdict));
        inbox(job, &job->n->record_q);
        return;
    }
    q = tms_api_call_new(TMS_API_USER_INFO);
    q->principal.service = true;
    snprintf(q->target_id, sizeof(q->target_id), "%s", job->user_id);
    msg = &q->msg;
    msg->op = TMS_STAGE_EXECUTE;
    msg->reply_to = job->n->mailbox;
    msg->cont = on_user_info;
    msg->ctx = job;
    if (tms_mailbox_post(job->n->cfg.auth, &msg) != 0) {
        tms_api_call_free(&q);
        ack(job, tms_ack_transient(USERS, "auth mailbox full or closed", 0));
    }
}

static void on_message(void *owner, tms_msg_t *msg)
{
    tms_notifier_t *n = owner;
    tms_delivery_t *d = (tms_delivery_t *)msg;
    job_t *job;
    if (msg->kind == TMS_MSG_STOP) {
        tms_stopper_hold(&n->stop, msg);
        tms_stopper_check(&n->stop, n->mailbox, n->inflight);
        return;
    }
    if (msg->op != TMS_EVENT_DELIVERY) {
        if (msg->free_fn)
            msg->free_fn(msg);
        return;
    }
    if (tms_stopping(&n->stop)) { /* comes again after a restart */
        n->cfg.bus->ack(n->cfg.bus, &d, tms_ack_transient("notifier", "stopping", 0));
        return;
    }
    job = tms_new(job_t);
    job->n = n;
    job->delivery = d;
    n->inflight++;
    if (tms_event_notification_parse(d->payload, job->type, job->user_id, &job->task_id,
                                     job->event_id, &job->title, job->assigned_by) != 0 ||
        (strcmp(job->type, "task_created") != 0 && strcmp(job->type, "task_assigned") != 0)) {
        /* A poison message: dead-lettered after events.dlq_after attempts, stalling
         * nothing meanwhile. */
        if (d->attempt == 1) {
            tms_counter_add(n->dropped, 1);
            tms_log_error("event_malformed", "topic=%s", d->topic);
        }
        ack(job, tms_ack_permanent("malformed event"));
        return;
    }
    if (!job->event_id[0]) /* the original system's producers send none */
        tms_event_id_derive(d->topic, d->payload, d->payload_len, job->event_id);
    {
        /* The same event twice at once (the original's producers publish a payload
         * again as a new message, on another partition): the inbox could not tell them
         * apart until the first is recorded, so the second waits for it. */
        job_t *twin = twin_of(n, job->event_id);
        if (twin) {
            job_t **tail = &twin->twins;
            while (*tail)
                tail = &(*tail)->next;
            *tail = job;
            return;
        }
        track(job);
    }
#ifdef TMS_FAULTS
    /* Test-only switch (never compiled into release builds): an event with this
     * title fails every time, as a poison message for the dead-letter path. */
    const char *poison = getenv("TMS_FAULT_NOTIFY_FAIL_TITLE");
    if (poison && job->title && strcmp(poison, job->title) == 0) {
        tms_counter_add(n->failed, 1);
        ack(job, tms_ack_permanent("TMS_FAULT_NOTIFY_FAIL_TITLE"));
        return;
    }
#endif
    inbox(job, &n->seen_q);
}

tms_notifier_t *tms_notifier_start(uv_loop_t *loop, const tms_notifier_config_t *cfg)
{
    tms_notifier_t *n = tms_new(tms_notifier_t);
    n->loop = loop;
    n->cfg = *cfg;
    n->mailer_name = cfg->mailer && cfg->mailer->name ? cfg->mailer->name : "mailer";
    n->limit =
        tms_notify_limit_new(cfg->per_assigner_per_hour, cfg->per_recipient_per_hour, LIMIT_KEYS);
    n->mailbox = tms_mailbox_new(loop, "notifier", cfg->mailbox_capacity, on_message, n);
    n->seen_q = (inbox_queue_t){.kind = TMS_INBOX_SEEN, .then = seen_checked};
    n->record_q = (inbox_queue_t){.kind = TMS_INBOX_RECORD, .then = recorded};
#define EMAILS(outcome)                                                                            \
    tms_metrics_counter("tms_emails_total", "assignment emails by outcome",                        \
                        "outcome=\"" outcome "\"")
    n->sent = EMAILS("sent");
    n->duplicate = EMAILS("duplicate");
    n->dropped = EMAILS("dropped");
    n->failed = EMAILS("failed");
    n->dead_letter = EMAILS("dead_letter");
    n->suppressed = EMAILS("suppressed");
#undef EMAILS
    tms_mailbox_export_depth(n->mailbox);
    if (cfg->bus->subscribe(cfg->bus, TMS_TOPIC_NOTIFICATIONS, CONSUMER, n->mailbox))
        tms_log_error("subscribe_failed", "topic=%s group=%s", TMS_TOPIC_NOTIFICATIONS, CONSUMER);
    return n;
}

void tms_notifier_mailer_closed(tms_notifier_t *n)
{
    n->mailer_closed = true;
}

tms_mailbox_t *tms_notifier_mailbox(tms_notifier_t *n)
{
    return n->mailbox;
}

size_t tms_notifier_inflight(tms_notifier_t *n)
{
    return n->inflight;
}

void tms_notifier_free(tms_notifier_t **pn)
{
    tms_notifier_t *n = *pn;
    if (!n)
        return;
    *pn = NULL;
    tms_mailbox_free(&n->mailbox);
    tms_notify_limit_free(&n->limit);
    free(n);
}
