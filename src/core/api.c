#include "core/api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"

static void free_msg(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    tms_api_call_free(&call);
}

tms_api_call_t *tms_api_call_new(tms_api_op_t op)
{
    tms_api_call_t *call = tms_new(tms_api_call_t);
    call->op = op;
    call->msg.free_fn = free_msg;
    return call;
}

static void free_secret(char *s)
{
    if (!s)
        return;
    sodium_memzero(s, strlen(s));
    free(s);
}

void tms_api_call_free(tms_api_call_t **pcall)
{
    tms_api_call_t *call = *pcall;
    if (!call)
        return;
    *pcall = NULL;
    free_secret(call->bearer);
    free(call->email);
    free_secret(call->password);
    free_secret(call->token);
    free(call->title);
    free(call->description);
    free(call->status);
    free(call->assigned_to);
    free(call->idempotency_key);
    free(call->cursor);
    free(call->next_cursor);
    tms_task_dispose(&call->task);
    for (size_t i = 0; i < call->ntasks; i++)
        tms_task_dispose(&call->tasks[i]);
    free(call->tasks);
    tms_api_cancel_release(&call->cancel);
    sodium_memzero(call->user.password_hash, sizeof(call->user.password_hash));
    free(call);
}

tms_api_cancel_t *tms_api_cancel_attach(tms_api_call_t *call)
{
    if (!call->cancel)
        call->cancel = tms_new(tms_api_cancel_t);
    call->cancel->refs = 2; /* the call's and the adapter's */
    return call->cancel;
}

void tms_api_cancel_release(tms_api_cancel_t **pc)
{
    tms_api_cancel_t *c = *pc;
    *pc = NULL;
    if (c && --c->refs == 0)
        free(c);
}

bool tms_api_call_abandoned(const tms_api_call_t *call, uint64_t now_ms)
{
    return (call->cancel && call->cancel->cancelled) ||
           (call->deadline_ms && now_ms >= call->deadline_ms);
}

tms_status_t tms_api_abandoned_status(const tms_api_call_t *call, const char **message)
{
    bool cancelled = call->cancel && call->cancel->cancelled;
    *message = cancelled ? "cancelled by the client" : "deadline exceeded";
    return cancelled ? TMS_CANCELLED : TMS_DEADLINE_EXCEEDED;
}

const char *tms_api_op_name(tms_api_op_t op)
{
    return tms_op_name(op);
}

void tms_api_fail(tms_api_call_t *call, tms_status_t code, const char *fmt, ...)
{
    va_list ap;
    call->err.code = code;
    va_start(ap, fmt);
    vsnprintf(call->err.message, sizeof(call->err.message), fmt, ap);
    va_end(ap);
    tms_mailbox_reply(&call->msg);
}
