/* Destructors of the port messages (task store, outbox, mailer). */
#include <stdio.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "core/mailer.h"
#include "core/outbox.h"
#include "core/task_store.h"

static void free_task_msg(tms_msg_t *msg)
{
    tms_task_op_t *op = (tms_task_op_t *)msg;
    tms_task_op_free(&op);
}

tms_task_op_t *tms_task_op_new(tms_task_op_kind_t kind, tms_arena_t *arena)
{
    tms_task_op_t *op;
    if (arena) {
        op = tms_arena_calloc(arena, 1, sizeof(*op));
        op->arena = arena;
    } else {
        op = tms_new(tms_task_op_t);
        tms_arena_init(&op->own, NULL, 0);
        op->arena = &op->own;
    }
    op->msg.op = (int)kind;
    op->msg.free_fn = free_task_msg;
    return op;
}

void tms_task_op_free(tms_task_op_t **pop)
{
    tms_task_op_t *op = *pop;
    if (!op)
        return;
    *pop = NULL;
    if (op->arena == &op->own) {
        tms_arena_fini(&op->own);
        free(op);
    }
}

void tms_outbox_op_free(tms_outbox_op_t **pop)
{
    tms_outbox_op_t *op = *pop;
    if (!op)
        return;
    *pop = NULL;
    free(op->seqs);
    free(op->ids);
    free(op->ids_seen);
    free(op->event.payload);
    for (size_t i = 0; i < op->nevents; i++)
        free(op->events[i].payload);
    free(op->events);
    free(op);
}

static void free_outbox_msg(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_outbox_op_free(&op);
}

tms_outbox_op_t *tms_outbox_op_new(tms_outbox_op_kind_t kind)
{
    tms_outbox_op_t *op = tms_new(tms_outbox_op_t);
    op->msg.op = (int)kind;
    op->msg.free_fn = free_outbox_msg;
    return op;
}

tms_outbox_op_t *tms_inbox_op_new(tms_outbox_op_kind_t kind, const char *consumer, size_t nids)
{
    tms_outbox_op_t *op = tms_outbox_op_new(kind);
    snprintf(op->consumer, sizeof(op->consumer), "%s", consumer);
    op->ids = tms_calloc(nids, sizeof(*op->ids));
    if (kind == TMS_INBOX_SEEN) /* a record has no answers to give */
        op->ids_seen = tms_calloc(nids, sizeof(*op->ids_seen));
    op->nids = nids;
    return op;
}

tms_outbox_op_t *tms_inbox_op_one(tms_outbox_op_kind_t kind, const char *consumer,
                                  const char *event_id)
{
    tms_outbox_op_t *op = tms_inbox_op_new(kind, consumer, 1);
    snprintf(op->ids[0], sizeof(op->ids[0]), "%s", event_id);
    return op;
}

tms_mail_t *tms_mail_new(void)
{
    return tms_new(tms_mail_t);
}

void tms_mail_free(tms_mail_t **pm)
{
    tms_mail_t *m = *pm;
    if (!m)
        return;
    *pm = NULL;
    free(m->text);
    free(m->html);
    free(m);
}
