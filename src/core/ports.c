/* Destructors of the port messages (task store, outbox, mailer). */
#include <stdlib.h>

#include "core/alloc.h"
#include "core/mailer.h"
#include "core/outbox.h"
#include "core/task_store.h"

void tms_task_op_free(tms_task_op_t **pop)
{
    tms_task_op_t *op = *pop;
    if (!op)
        return;
    *pop = NULL;
    tms_task_dispose(&op->task);
    for (size_t i = 0; i < op->ntasks; i++)
        tms_task_dispose(&op->tasks[i]);
    free(op->tasks);
    free(op);
}

void tms_outbox_op_free(tms_outbox_op_t **pop)
{
    tms_outbox_op_t *op = *pop;
    if (!op)
        return;
    *pop = NULL;
    free(op->seqs);
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
