#include "actors/notifier.h"

#include <inttypes.h>
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

#define CONSUMER "notification-group"
#define SUBJECT "New Task Assigned"
#define LIMIT_KEYS 20000 /* buckets per limit (~130 bytes each): ~5 MiB at most for both */

struct tms_notifier {
    uv_loop_t *loop;
    tms_mailbox_t *mailbox;
    tms_notifier_config_t cfg;
    tms_notify_limit_t *limit;
    size_t inflight;
    tms_stopper_t stop;
    tms_counter_t *sent, *duplicate, *dropped, *failed, *dead_letter, *suppressed;
};

typedef struct job job_t;
struct job {
    tms_notifier_t *n;
    tms_delivery_t *delivery;
    char type[16];
    char user_id[25];
    int64_t task_id;
    char event_id[37];
    char *title;
    char assigned_by[25]; /* "" when the event names nobody (older events) */
    void (*then)(job_t *job, tms_outbox_op_t *op);
};

static void ack(job_t *job, int ok)
{
    tms_notifier_t *n = job->n;
    n->cfg.bus->ack(n->cfg.bus, &job->delivery, ok);
    n->inflight--;
    free(job->title);
    free(job);
    tms_stopper_check(&n->stop, n->mailbox, n->inflight);
}

/* ---- inbox ----------------------------------------------------------- */

static void on_inbox_reply(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    job_t *job = msg->ctx;
    job->then(job, op);
    tms_outbox_op_free(&op);
}

static void inbox(job_t *job, tms_outbox_op_kind_t kind,
                  void (*then)(job_t *job, tms_outbox_op_t *op))
{
    tms_outbox_op_t *op = tms_outbox_op_new(kind);
    op->msg.reply_to = job->n->mailbox;
    op->msg.cont = on_inbox_reply;
    op->msg.ctx = job;
    snprintf(op->consumer, sizeof(op->consumer), CONSUMER);
    snprintf(op->event_id, sizeof(op->event_id), "%s", job->event_id);
    job->then = then;
    if (tms_outbox_submit(job->n->cfg.inbox, &op) != 0) {
        tms_outbox_op_free(&op);
        ack(job, 0);
    }
}

static void recorded(job_t *job, tms_outbox_op_t *op)
{
    /* If the record failed, a redelivery mails again; the Maildir adapter still
     * recognises the event_id, and SMTP receivers the Message-ID. */
    ack(job, op->err.code == TMS_OK);
}

/* ---- mail ------------------------------------------------------------ */

static void on_mail_reply(tms_msg_t *msg)
{
    tms_mail_t *mail = (tms_mail_t *)msg;
    job_t *job = msg->ctx;
    tms_status_t code = mail->err.code;
    int duplicate = mail->duplicate;
    tms_mail_free(&mail);
    if (code == TMS_OK) {
        tms_counter_add(duplicate ? job->n->duplicate : job->n->sent, 1);
        tms_log_info("email_sent", "event_id=%s task=%" PRId64 " user=%s duplicate=%d",
                     job->event_id, job->task_id, job->user_id, duplicate);
        inbox(job, TMS_INBOX_RECORD, recorded);
    } else if (code == TMS_FAILED_PRECONDITION) {
        /* Refused permanently and kept as a dead letter by the mailer: handled. */
        tms_counter_add(job->n->dead_letter, 1);
        tms_log_warn("email_dead_letter", "event_id=%s task=%" PRId64 " user=%s", job->event_id,
                     job->task_id, job->user_id);
        inbox(job, TMS_INBOX_RECORD, recorded);
    } else if (code == TMS_INVALID_ARGUMENT) {
        tms_counter_add(job->n->dropped, 1);
        tms_log_error("email_dropped", "event_id=%s reason=unsafe_mail", job->event_id);
        inbox(job, TMS_INBOX_RECORD, recorded);
    } else {
        tms_counter_add(job->n->failed, 1);
        tms_log_warn("email_failed", "event_id=%s error=%s", job->event_id, tms_status_name(code));
        ack(job, 0);
    }
}

static void free_mail_msg(tms_msg_t *msg)
{
    tms_mail_t *m = (tms_mail_t *)msg;
    tms_mail_free(&m);
}

static void send_mail(job_t *job, const char *email)
{
    tms_mail_t *mail = tms_mail_new();
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
        ack(job, 0);
    }
}

/* ---- assignee lookup --------------------------------------------------- */

static void on_user_info(tms_msg_t *msg)
{
    tms_api_call_t *q = (tms_api_call_t *)msg;
    job_t *job = msg->ctx;
    if (q->err.code == TMS_NOT_FOUND || q->err.code == TMS_INVALID_ARGUMENT) {
        tms_counter_add(job->n->dropped, 1);
        tms_log_warn("email_dropped", "event_id=%s reason=assignee_gone user=%s", job->event_id,
                     job->user_id);
        tms_api_call_free(&q);
        inbox(job, TMS_INBOX_RECORD, recorded);
        return;
    }
    if (q->err.code != TMS_OK) {
        tms_api_call_free(&q);
        ack(job, 0);
        return;
    }
    send_mail(job, q->user.email);
    tms_api_call_free(&q);
}

static void seen_checked(job_t *job, tms_outbox_op_t *op)
{
    tms_api_call_t *q;
    tms_msg_t *msg;
    tms_notify_verdict_t verdict;
    if (op->err.code != TMS_OK) {
        ack(job, 0);
        return;
    }
    if (op->seen) {
        tms_counter_add(job->n->duplicate, 1);
        ack(job, 1);
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
        inbox(job, TMS_INBOX_RECORD, recorded);
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
        ack(job, 0);
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
        n->cfg.bus->ack(n->cfg.bus, &d, 0);
        return;
    }
    job = tms_new(job_t);
    job->n = n;
    job->delivery = d;
    n->inflight++;
    if (tms_event_notification_parse(d->payload, job->type, job->user_id, &job->task_id,
                                     job->event_id, &job->title, job->assigned_by) != 0 ||
        (strcmp(job->type, "task_created") != 0 && strcmp(job->type, "task_assigned") != 0)) {
        tms_counter_add(n->dropped, 1);
        tms_log_error("event_malformed", "topic=%s dropped=1", d->topic);
        ack(job, 1); /* a poison message must not stall the topic */
        return;
    }
#ifdef TMS_FAULTS
    /* Test-only switch (never compiled into release builds): an event with this
     * title fails every time, as a poison message for the dead-letter path. */
    const char *poison = getenv("TMS_FAULT_NOTIFY_FAIL_TITLE");
    if (poison && strcmp(poison, job->title) == 0) {
        tms_counter_add(n->failed, 1);
        ack(job, 0);
        return;
    }
#endif
    inbox(job, TMS_INBOX_SEEN, seen_checked);
}

tms_notifier_t *tms_notifier_start(uv_loop_t *loop, const tms_notifier_config_t *cfg)
{
    tms_notifier_t *n = tms_new(tms_notifier_t);
    n->loop = loop;
    n->cfg = *cfg;
    n->limit =
        tms_notify_limit_new(cfg->per_assigner_per_hour, cfg->per_recipient_per_hour, LIMIT_KEYS);
    n->mailbox = tms_mailbox_new(loop, "notifier", cfg->mailbox_capacity, on_message, n);
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
